"""eagle_ext: train EAGLE-3 and P-EAGLE speculative-decoding draft models for a frozen target LLM.

Subpackages (import what you need; nothing heavy is imported here):

- ``eagle_ext.ops``     hot ops (C++ / Triton / chunked torch) with the plain-torch reference beside each
- ``eagle_ext.data``    chat rendering, assistant masks, draft vocabulary, packing, loaders
- ``eagle_ext.models``  target capture and the Llama-style draft
- ``eagle_ext.eagle3``  EAGLE-3 test-time-training trainer module and metrics
- ``eagle_ext.peagle``  P-EAGLE COD sampling, mask, parallel-drafting trainer
"""

__version__ = "0.1.0"
