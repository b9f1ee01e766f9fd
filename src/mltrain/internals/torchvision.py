"""What mltrain takes from torchvision's internals: the hook through which a v2 transform calls its kernels.
``tests/unit/test_internals.py`` checks it against the installed torchvision. Nothing here imports torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class KernelOverride:
    """Mixin for a ``torchvision.transforms.v2`` transform: run another kernel for some functionals and inputs.

    Put it before the transform's class (``class T(KernelOverride, v2.ColorJitter)``) and implement
    :meth:`override_kernel`. The transform keeps its own ``make_params`` and ``transform``, so its random draws
    and the order of its steps stay torchvision's; only the kernels chosen are replaced.

    Why the private ``Transform._call_kernel``: every v2 transform calls each kernel through it. The public
    ``torchvision.transforms.v2.functional.register_kernel`` registers kernels for custom ``TVTensor`` types
    only (it refuses PIL images and the built-in types), and it would change that functional for every
    transform in the process. Overriding the public ``transform`` instead would mean copying the transform's
    body and relying on the layout of the dict its ``make_params`` returns, which is just as undocumented.
    """

    def override_kernel(self, functional: Callable[..., Any], inpt: Any) -> Callable[..., Any] | None:
        """The kernel to run for ``functional`` on ``inpt`` (called as ``kernel(inpt, *args, **kwargs)``), or
        None for torchvision's own."""
        return None

    def _call_kernel(self, functional: Callable[..., Any], inpt: Any, *args: Any, **kwargs: Any) -> Any:
        kernel = self.override_kernel(functional, inpt)
        if kernel is None:
            return super()._call_kernel(functional, inpt, *args, **kwargs)  # type: ignore[misc]
        return kernel(inpt, *args, **kwargs)
