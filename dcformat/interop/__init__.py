"""The edges: other formats and frameworks (torch, safetensors, npz, the Deep Compression authors'
`.net` files), kept apart from the codec core, which never imports this package.

Each module imports its framework lazily, so `import dcformat` stays light.
"""
