"""The Pinba wire: encoding, framing, decoding, validation."""
