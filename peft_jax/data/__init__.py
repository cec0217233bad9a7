"""Data: dataset loading, chat templates, tokenisation, packing and the synthetic capability suite."""
