"""cosjax: ANN-to-SNN conversion with calibrated offset spikes (COS) in JAX.

Public API:
  qcfs, QCFS                  the quantised clip-floor-shift activation
  if_neuron                   integrate-and-fire neurons over time (lax.scan)
  calibrate_v0                the COS offset-spike calibration of v0
  simulate                    run a QCFS model as an SNN, [T, B, classes]
  Method, methods             the conversion methods: IF (plain, COS, signed), SRP,
                              group neurons, parallel neurons
  run_snn                     the traceable core of simulate, with hooks
  check_convertible           refuse models the SNN cannot carry exactly
  surrogate                   surrogate gradients of the spike function
  correct_per_step            correct counts of accumulated outputs, t = 1..T
  create_model, VGG, ResNet   the architectures of the reference
  xla_options                 compiler options for fast CPU convolutions
  target                      the platform programs are compiled for (AOT for TPU/GPU)
  static_calibration          one calibrated initial potential per neuron, from data
  calibrate_static            static potentials {layer: v0}, layer by layer
  simulate_static             simulate from static potentials, no pre-simulation
  save_potentials, load_potentials   static potentials to/from a .npz file
"""

from cosjax import methods, static_calibration, surrogate, target, xla_options
from cosjax.convertible import check_convertible
from cosjax.methods import Method
from cosjax.models import ARCHITECTURES, VGG, ResNet, create_model
from cosjax.neuron import calibrate_v0, if_neuron, presimulate, shift_v0
from cosjax.qcfs import QCFS, qcfs
from cosjax.simulate import correct_per_step, run_snn, simulate
from cosjax.static_calibration import calibrate_static, load_potentials, save_potentials, simulate_static

__all__ = [
    "ARCHITECTURES", "Method", "QCFS", "ResNet", "VGG", "calibrate_static", "calibrate_v0",
    "check_convertible", "correct_per_step", "create_model", "if_neuron", "load_potentials",
    "methods", "presimulate", "qcfs", "run_snn", "save_potentials", "shift_v0", "simulate",
    "simulate_static", "static_calibration", "surrogate", "target", "xla_options",
]
__version__ = "0.1.0"
