"""Model files from and for other tools: Hugging Face GPT-2 directories (`hf`) and llm.c model `.bin`s (`llmc`).

Both readers return `(ModelConfig, state_dict)` in our layout, checked tensor by tensor against the shapes a
`GPT` of that config has (`shapes.check_state`); `gpt2pipe.model.load.load_any` picks the reader by path.
"""
