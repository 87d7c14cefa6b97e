from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower, build_vision_tower

__all__ = ["CLIPVisionTower", "build_vision_tower"]
