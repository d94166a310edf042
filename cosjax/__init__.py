"""cosjax: ANN-to-SNN conversion with calibrated offset spikes (COS) in JAX.

Public API:
  qcfs, QCFS                  the quantised clip-floor-shift activation
  if_neuron                   integrate-and-fire neurons over time (lax.scan)
  calibrate_v0                the COS offset-spike calibration of v0
  simulate                    run a QCFS model as an SNN, [T, B, classes]
  run_snn                     the traceable core of simulate, with hooks
  check_convertible           refuse models the SNN cannot carry exactly
  surrogate                   surrogate gradients of the spike function
  correct_per_step            correct counts of accumulated outputs, t = 1..T
  create_model, VGG, ResNet   the architectures of the reference
  xla_options                 compiler options for fast CPU convolutions
"""

from cosjax import surrogate, xla_options
from cosjax.convertible import check_convertible
from cosjax.models import ARCHITECTURES, VGG, ResNet, create_model
from cosjax.neuron import calibrate_v0, if_neuron, presimulate, shift_v0
from cosjax.qcfs import QCFS, qcfs
from cosjax.simulate import correct_per_step, run_snn, simulate

__all__ = [
    "ARCHITECTURES", "QCFS", "ResNet", "VGG", "calibrate_v0", "check_convertible",
    "correct_per_step", "create_model", "if_neuron", "presimulate", "qcfs", "run_snn",
    "shift_v0", "simulate", "surrogate", "xla_options",
]
__version__ = "0.1.0"
