"""The link: UART PHY, COBS framing, CRC-16 and the command router that engines plug into."""
