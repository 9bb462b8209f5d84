"""MetaSAE reproduction library: models, penalty, trainer, activation pipeline and metrics."""

from paperlib.profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "Profile", "get_profile"]
__version__ = "0.1.0"
