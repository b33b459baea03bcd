"""TensorRT tier: optimisation profiles, the fp16 precision policy, the engine cache and the engine builder.

Nothing here imports ``tensorrt`` or ``pycuda`` at module load: the builder and the runtime backend
(:mod:`mobile_o_ros.runtime.trt_backend`) import them inside the functions that need a GPU, so profiles,
cache keys and the precision policy are usable (and tested) on a CPU-only machine.

The tier sits below :mod:`mobile_o_ros.runtime` and imports nothing from it; the tools that run engines
through the runtime (``mobile-o gpu-report`` in :mod:`mobile_o_ros.gpu_report`, the TensorRT rows of
:mod:`mobile_o_ros.bench`) sit above both.
"""

from mobile_o_ros.trt.cache import EngineCacheError, default_engine_dir
from mobile_o_ros.trt.profiles import TARGETS, choose_bucket, profiles_for

__all__ = ["TARGETS", "EngineCacheError", "choose_bucket", "default_engine_dir", "profiles_for"]
