"""Client shared-memory regions: registered by name, mapped once, leased by the requests that use them.

``registry.py`` keeps the regions (one namespace for system and CUDA regions, as Triton) and
their reference counts; ``system.py`` opens and maps POSIX shared-memory objects; ``cuda.py``
opens CUDA IPC handles with CuPy where a GPU is present.
"""

from evserve.gpu.shared_memory.registry import NO_LEASES, Leases, Region, RegionRegistry

__all__ = ["NO_LEASES", "Leases", "Region", "RegionRegistry"]
