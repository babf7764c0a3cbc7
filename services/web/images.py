"""Moved to ``shared.images`` (one safe decoder for every entry point); kept so old imports still work."""
from shared.images import DecodedImage, ImageError, ImageLimits, ImageTooLarge, decode_image, downscale, image_format

__all__ = ["DecodedImage", "ImageError", "ImageLimits", "ImageTooLarge", "decode_image", "downscale", "image_format"]
