"""ZipML reference models in NumPy: the algorithmic golden model of the SGD gateware.

Ref: H. Zhang, J. Li, K. Kara, D. Alistarh, J. Liu, C. Zhang, "ZipML: Training linear models with end-to-end low
precision, and a little bit of deep learning", ICML 2017 (arXiv 1611.05402); public code fpgasystems/ZipML-XeonFPGA,
fpgasystems/ZipML-PYNQ, ZipML/caffe.

Modules: :mod:`.rng` (hardware-twin xorshift32 lanes), :mod:`.quantize` (levels, encoding, scaling, rounding),
:mod:`.pack` (bus-word packing), :mod:`.sgd` (least-squares SGD variants), :mod:`.optimal_levels`
(variance-optimal levels), :mod:`.nonlinear` (Chebyshev logistic, refetching SVM), :mod:`.datasets`,
:mod:`.deep` (PyTorch CNN with quantized weights; imports torch lazily, only when used), :mod:`.fixed_point`
(bit-exact integer qFSGD reference for the gateware), :mod:`.report` (benchmark output helpers).
"""

from .datasets import DATASET_NAMES, Dataset, DatasetError, load_dataset, make_synthetic, prepare_linear
from .optimal_levels import (optimal_levels, optimal_levels_brute_force, optimal_levels_candidates,
                             optimal_levels_exact, per_feature_optimal_levels, variance_cost)
from .pack import (pack_double_sampled, pack_fields, pack_rows_with_label, unpack_double_sampled, unpack_fields,
                   unpack_rows_with_label, words_as_ints)
from .quantize import (add_bias, dequantize, from_field, minmax_scale, n_levels, quantize, quantize_codes,
                       quantize_scaled, quantize_to_levels, rounding_variance, scale_labels, to_field,
                       uniform_levels)
from .rng import Xorshift32Lanes, lane_seeds, stochastic_round_fixed
from .sgd import SGDResult, least_squares_loss, least_squares_optimum, linear_sgd, naive_biased_optimum

__all__ = [name for name in dir() if not name.startswith("_")]
