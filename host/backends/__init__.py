"""Backends behind ``host.device.Device``: a board over pyserial, Verilator, the Amaranth simulator."""
