from llava.model.multimodal_projector.builder import PROJECTORS, build_vision_projector

__all__ = ["PROJECTORS", "build_vision_projector"]
