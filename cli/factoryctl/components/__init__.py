"""The components of the local fleet, one module each (see `factoryctl.fleet`)."""
