"""The package's structure, checked from its source: imports run one way, private names stay where they belong.

* no import cycle among mltrain's modules (function-local imports count: they must not hide one);
* no module imports another module's private (``_name``) names;
* private or internal names of Ray, MLflow, Lightning, torch and torchvision are used in ``mltrain.internals``
  only (imports of ``_private``/``_internal`` modules, ``obj._name`` on framework objects, ``_name=`` keyword
  arguments, overrides of a framework class's private methods).

The source checks are in :mod:`tests.architecture` (also a command that counts what it finds in any tree).
"""

from __future__ import annotations

import importlib
import inspect

from tests.architecture import SRC, import_cycles, module_graph, private_framework_uses, private_imports

FRAMEWORKS = ("ray", "mlflow", "lightning", "torch", "torchvision", "torchmetrics", "pytorch_lightning")
DOCUMENTED_HOOKS = {("mltrain.tracking.datasets", "Food11Dataset", "_compute_digest")}
"""Private-looking methods a framework documents as the way to extend it: ``mlflow.data.dataset.Dataset`` asks
every subclass for ``_compute_digest`` (an abstract method)."""


def test_no_import_cycle() -> None:
    graph = module_graph(SRC)
    assert len(graph) > 60  # the whole package was read
    assert import_cycles(graph) == []


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports(SRC) == []


def test_private_framework_names_are_used_in_mltrain_internals_only() -> None:
    found = private_framework_uses(SRC)
    outside = [use for use in found if not use.startswith("mltrain/internals/")]
    assert outside == []
    assert found  # the check sees the uses that are there (in mltrain.internals)


def test_no_class_overrides_a_private_method_of_a_framework_class_outside_internals() -> None:
    overrides = []
    for name in module_graph(SRC):
        if name.startswith("mltrain.internals") or name in ("mltrain.__main__",):
            continue
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != name:
                continue
            framework_bases = [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in FRAMEWORKS]
            for attribute, value in vars(cls).items():
                method = inspect.isfunction(value) or isinstance(value, property | classmethod | staticmethod)
                private = method and attribute.startswith("_") and not attribute.startswith("__")
                if private and any(attribute in vars(base) for base in framework_bases):
                    overrides.append((name, cls.__name__, attribute))
    assert set(overrides) <= DOCUMENTED_HOOKS, set(overrides) - DOCUMENTED_HOOKS
