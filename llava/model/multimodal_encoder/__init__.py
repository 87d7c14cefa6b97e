"""Vision towers behind one interface (`base.VisionTower`), picked by the tower config's `model_type`.

Importing this package registers every family; a new one is a file here plus its import below.
"""

from llava.model.multimodal_encoder import clip_encoder, dinov2, fused, siglip  # noqa: F401  (register the families)
from llava.model.multimodal_encoder.base import (
    TOWERS,
    VisionTower,
    build_vision_tower,
    image_processor_class,
    load_vision_tower,
    read_tower_config,
)

__all__ = ["TOWERS", "VisionTower", "build_vision_tower", "image_processor_class", "load_vision_tower",
           "read_tower_config"]
