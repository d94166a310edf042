"""The progress line reports the rate since the previous report."""

from train import progress


def test_rate_is_per_report_window(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar = progress.Bar(total=4, desc="train", every=30.0)
    assert bar.tqdm is None                      # pytest's stderr is not a terminal
    clock[0] += 40.0
    bar.update(1, images=400, loss=2.0)          # 400 images in 40 s
    clock[0] += 10.0
    bar.update(1, images=1000)                   # within 30 s of the last line: silent
    clock[0] += 300.0                            # a pause
    bar.update(1, images=100)                    # 1100 images in 310 s
    clock[0] += 1.0
    bar.update(1, images=50)                     # the last step always prints
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["train: 1/4 loss=2 img/s=10.0",
                     "train: 3/4 loss=2 img/s=3.5",
                     "train: 4/4 loss=2 img/s=50.0"]
