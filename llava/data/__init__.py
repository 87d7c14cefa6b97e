"""Dataset converters to LLaVA training JSON (OK-VQA, Instruct-150K, COCO captions) and a validator."""
