"""Our data and models in other tools' formats, so they can be used without this package (docs/interop.md).

- `export_minari`: a rollouts artifact -> a Minari dataset (`wm export minari`);
- `import_minari`: a Minari dataset of RGB image observations -> a rollouts artifact (`wm import minari`);
- `export_safetensors`: V, M and C weights -> one safetensors file (`wm export safetensors`);
- `minari_format`: what the two Minari commands share (dataset folders, spaces, the keys we add);
- `optional`: the optional packages (`pip install 'worldmodels_cli[interop]'`), imported with a one-line error.
"""
