"""isc-bench: compare self-supervised methods for image copy detection under the ISC 2021 protocol."""

__version__ = "0.1.0"
