from edgeward._native import __version__
