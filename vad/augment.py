"""Training augmentation from the plan's augmentation arguments (torchvision transforms)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2


class RandomAugment:
    """Apply ``count`` transforms drawn at random (with replacement) from a list."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], Image.Image]], count: int) -> None:
        self.transforms = list(transforms)
        self.count = count

    def __call__(self, image: Image.Image) -> Image.Image:
        """Augment one image.

        Args:
            image: RGB image.

        Returns:
            The augmented image.
        """
        for index in torch.randint(len(self.transforms), (self.count,)).tolist():
            image = self.transforms[index](image)
        return image


def build_augmentation(
    names: Sequence[str],
    count: int,
    rotation_angle: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    blur_kernel_size: int,
) -> RandomAugment | None:
    """Build the augmentation the reference guide describes, or None when it is off.

    Args:
        names: Transform names among rotation, brightness, contrast, saturation, hue, blur.
        count: How many transforms to apply to each image (``augmentation_choice``).
        rotation_angle: Maximum absolute rotation in degrees.
        brightness: Brightness jitter degree.
        contrast: Contrast jitter degree.
        saturation: Saturation jitter degree.
        hue: Hue jitter degree (at most 0.5).
        blur_kernel_size: Maximum Gaussian blur kernel (made odd; below 3 disables blur).

    Returns:
        The callable, or None.
    """
    kernel = blur_kernel_size if blur_kernel_size % 2 == 1 else blur_kernel_size + 1
    available: dict[str, Callable[[Image.Image], Image.Image] | None] = {
        "rotation": v2.RandomRotation(rotation_angle) if rotation_angle > 0 else None,
        "brightness": v2.ColorJitter(brightness=brightness) if brightness > 0 else None,
        "contrast": v2.ColorJitter(contrast=contrast) if contrast > 0 else None,
        "saturation": v2.ColorJitter(saturation=saturation) if saturation > 0 else None,
        "hue": v2.ColorJitter(hue=hue) if hue > 0 else None,
        "blur": v2.GaussianBlur(kernel, sigma=(0.1, 2.0)) if kernel >= 3 else None,
    }
    transforms = [transform for name in dict.fromkeys(names) if (transform := available[name]) is not None]
    if not transforms or count <= 0:
        return None
    return RandomAugment(transforms, count)
