"""The fault switches' names, the one list: the scenario format's `faults:` accepts these and
`reference_impl.faults` switches them. It lives here, not in reference_impl, because the format
loads without torch and importing any reference_impl module runs its package's torch imports."""

# Each puts one upstream bug of docs/bug-classes.md back into the reference implementation.
FAULTS = (
    "logit_bias_on_cpu",  # mistral.rs #398: bias built on one device, logits on another
    "ancestors_on_cpu",  # Outlines #651: beam index left on the CPU
    "ancestors_on_first_device",  # Outlines #660 / transformers #9200: index not per layer
    "kv_cache_on_cpu",  # Petals #574: past cache converted with .to(dtype) only
    "dequantize_to_cpu",  # Candle #1823: quantized weights dequantized to the CPU
    "router_on_cpu",  # mistral.rs #1447: MoE router state on the wrong device
    "stray_roundtrip_per_step",  # vLLM #3384: a .cpu() and back on every decode step
    "mask_on_cpu",  # transformers #38558: constraint mask not on the scores' device
    "input_on_first_device",  # lm-eval-harness #1575: inputs to self.device, not the embedding's
    "padding_mask_on_cpu",  # a padded batch's attention mask built on the host and never moved
    "position_ids_on_cpu",  # a padded batch's per-row position ids built on the host and never moved
    "token_read_non_blocking",  # flashinfer #564, PyTorch #182190: a non-blocking D2H read before a sync
    "prefetch_without_wait",  # transformers' offloaded cache: a side-stream prefetch used without a wait
    "pageable_upload_per_step",  # vLLM #54660: non-blocking H2D from pageable memory, a hidden sync
)
