"""Device profiles: a live probe of this machine, or a named catalogue entry for simulated devices."""

from fedge.profiles.catalogue import catalogue_names, load_catalogue_profile, simulated_profile
from fedge.profiles.probe import probe

__all__ = ["catalogue_names", "load_catalogue_profile", "probe", "simulated_profile"]
