"""Meta-tests of bnverify itself (not of any target)."""

# pytester's in-process runs restore sys.modules afterwards; extension modules first imported
# inside such a run would be imported a second time later, which numpy and torch do not allow.
# The same for bnverify's own modules: a second copy of them would hold classes that the first
# copy's except clauses do not recognise.
import numpy  # noqa: F401
import torch  # noqa: F401

import bnverify.diagnose  # noqa: F401
import bnverify.instances  # noqa: F401
import bnverify.runner  # noqa: F401

pytest_plugins = ["pytester"]
