"""One :class:`Method` per synthesis method, registered by its ``--method`` name (see :mod:`.base`)."""

from infer_fast.synth.methods.base import Inputs, Method, get, names, register

# Each module registers its method; the import order is the order of names() (the CLI's choices, the demo's runs).
# isort: off
from infer_fast.synth.methods import infer  # noqa: E402, F401
from infer_fast.synth.methods import sre2l  # noqa: E402, F401
from infer_fast.synth.methods import random_naturals  # noqa: E402, F401
from infer_fast.synth.methods import controls  # noqa: E402, F401
# isort: on

__all__ = ["Inputs", "Method", "get", "names", "register"]
