"""Token and label constants shared with the official LLaVA codebase."""

IGNORE_INDEX = -100
# Placeholder id in input_ids where the projected image features are spliced in.
IMAGE_TOKEN_INDEX = -200

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
