"""The `llm` model's Triton adapter: model.py (entry), request_inputs, metrics, text_ids."""
