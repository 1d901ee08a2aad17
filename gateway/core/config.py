"""The gateway reads its configuration from the one hpcwaas settings object."""

from hpcwaas.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
