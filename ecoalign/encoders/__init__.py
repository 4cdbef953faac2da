"""Encoders: the frozen DOFA backbone, the image adapter, relevé encoders, and the registry that loads them."""
