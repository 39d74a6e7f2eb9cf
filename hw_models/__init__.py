"""hw_models: area and power of PWL datapaths, and Verilog export (not yet built)."""
