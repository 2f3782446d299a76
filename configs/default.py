"""The defaults every config starts from, as a config file (--config=configs/default.py).

They are written, one comment per field, in jaxquant/config_defaults.py: the library
reads them too, and the library does not import configs/.
"""

from jaxquant.config_defaults import get_config  # noqa: F401  (configs call default.get_config())
