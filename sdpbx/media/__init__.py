"""Media: the MediaBackend seam between calls and an RTP relay."""

from .backend import MediaBackend, PassthroughMedia

__all__ = ["MediaBackend", "PassthroughMedia"]
