"""libvirt XML as typed elements: `model` is the machinery (one declaration per XML fact, one
generic render and parse); `domain`, `network` and `storage` declare libvirt's documents.

These modules only convert between objects and XML; policy lives beside them in `agents/`
(`translate.py` for domains, `networks.py`, `storage.py`).
"""
