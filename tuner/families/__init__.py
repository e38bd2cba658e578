"""Model families: one module each, plain PyTorch / scikit-learn, no Ray. Importing registers them."""
from tuner.families.base import (FAMILIES, DataInfo, Family, Learner, Param, RunContext, get_family, register_family,
                                 shipped_families)
from tuner.families import linear, mlp, cnn  # noqa: F401,E402  (register)
from tuner.families import transfer  # noqa: F401,E402  (register)
from tuner.families import knn, features  # noqa: F401,E402  (register)

__all__ = ["FAMILIES", "DataInfo", "Family", "Learner", "Param", "RunContext", "get_family", "register_family",
           "shipped_families"]
