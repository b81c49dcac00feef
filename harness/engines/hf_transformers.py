"""transformers (+ accelerate for `auto`) as an engine: `generate()` as users call it.

The model loads on the CPU from the tiny-model directory, then moves to its device, or for
`auto` is dispatched by accelerate over the GPUs with a balanced layer map (the same split
the reference uses), so real and simulated runs take the same path. The harness hooks the
model's forward for the phases; the adapter marks each prompt's prefill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.engines import register
from harness.engines.base import (
    TORCH_DTYPES,
    Capabilities,
    Engine,
    Generation,
    Placement,
    Request,
    Unsupported,
)
from harness.engines.hf_compat import dtype_argument, sequence_bias_argument
from harness.engines.options import Assistant, PeftAdapter, TransformersOptions
from harness.engines.versions import engine_problem, import_problem, installed_version
from harness.format.scenario import Budget, PhaseBudgets, TransfersCheck

# generate()'s own steady state per decode token, measured (README "Transfer profiles"): no
# copy to or from the host, one sync (the stopping criteria's `bool(unfinished.max() == 0)`,
# transformers/generation/utils.py). On auto, accelerate's hooks move the position embeddings
# and the mask into every layer on the second GPU, so the D2D count grows with the depth (5 on
# the 2-layer tiny llama, 8 on 4 layers) and is not judged there.
TRANSFORMERS_TRANSFERS = TransfersCheck(decode=Budget(h2d=0, d2h=0, syncs=1), cuda=PhaseBudgets(decode=Budget(d2d=0)))
TRANSFORMERS_FEATURE_TRANSFERS = {
    # The grammar mask (built on the host) uploaded, and the adapter's processor reading the
    # generated ids back (`input_ids.tolist()`, a sync) to advance the grammar.
    "json_schema": TRANSFORMERS_TRANSFERS.model_copy(update={"decode": Budget(h2d=1, d2h=0, syncs=2)}),
}


def balanced_device_map(model: torch.nn.Module, devices: tuple[str, ...]) -> dict[str, str]:
    """Contiguous groups of decoder layers over `devices`; what the model registers before its
    layer list (embeddings) and the rotary tables go with the first group, what it registers
    after (final norm, head) with the last. Found from the module tree, so any architecture's
    naming works (llama's `model.layers`, gpt2's `transformer.h`, ...)."""
    name, layers = _decoder_layers(model)
    per_device, extra = divmod(len(layers), len(devices))
    device_map: dict[str, str] = {}
    layer = 0
    for index, device in enumerate(devices):
        for _ in range(per_device + (1 if index < extra else 0)):
            device_map[f"{name}.{layer}"] = device
            layer += 1
    after_layers = False
    for module_name, module in model.named_modules():
        if module_name == name:
            after_layers = True
            continue
        if not module_name or module_name.startswith(name + "."):
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
        if not own:
            continue
        device = devices[0] if not after_layers or module_name.endswith("rotary_emb") else devices[-1]
        if any(True for child in module.children() for _ in child.parameters()) or any(
                True for child in module.children() for _ in child.buffers()):
            # A module with tensors of its own and children that have theirs (gpt's
            # `transformer.position_ids`): its tensors by name, so the key does not also cover
            # (and move) the children, which have keys of their own.
            device_map |= {f"{module_name}.{tensor}": device for tensor in own}
        else:
            device_map[module_name] = device
    return device_map


def _decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's list of decoder layers: the ModuleList as long as its layer count. A model
    with several such lists (XLM's attentions, ffns, ... one list per layer part; HRM's two
    stacks) has no one split by layer: `Unsupported`, so its auto cases skip saying so."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    count = getattr(config, "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    matching = [(n, m) for n, m in lists if len(m) == count]
    if not matching and lists:  # a layer count that is not the list's length (HRM counts recurrent slots)
        longest = max(len(m) for _, m in lists)
        matching = [(n, m) for n, m in lists if len(m) == longest]
    # Lists inside another one (LongCat's per-layer pairs of attentions) are parts of its layers.
    matching = [(n, m) for n, m in matching if not any(n.startswith(other + ".") for other, _ in matching)]
    text = [(n, m) for n, m in matching if "language_model" in n.split(".")]
    if len(matching) > 1 and len(text) == 1:
        # An image-text model: its text decoder's layers are split; the vision tower, registered
        # before them, goes with the first group (as device_map="auto" fills GPU 0 first).
        return text[0]
    if len(matching) > 1:
        raise Unsupported(f"{type(model).__name__} has {len(matching)} lists of {len(matching[0][1])} layers "
                          f"({', '.join(n for n, _ in matching)}): no one split by layer over devices")
    if not matching:
        raise Unsupported(f"{type(model).__name__}: no list of decoder layers to split over devices")
    return matching[0]


def _place_own_tensors(model: torch.nn.Module, device_map: dict[str, str]) -> None:
    """Device-map keys that name a tensor (a parent module's own, see balanced_device_map):
    accelerate covers them but leaves buffers where they are, so they are moved here."""
    for key, device in device_map.items():
        owner_name, _, tensor = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        buffer, parameter = owner._buffers.get(tensor), owner._parameters.get(tensor)
        if buffer is not None:
            owner._buffers[tensor] = buffer.to(device)
        elif parameter is not None:
            owner._parameters[tensor] = torch.nn.Parameter(parameter.data.to(device), requires_grad=parameter.requires_grad)


class JsonSchemaProcessor:
    """A transformers logits processor constraining every row to a JSON schema with
    llguidance (the reference implementation's `JsonConstraint`: mask computed on the host,
    applied on the scores' device). Rows are re-synchronised from `input_ids` each step, so
    beam search's reordering is followed too. Reading the generated ids back costs one
    device-to-host copy per step: a host-side grammar needs the tokens."""

    def __init__(self, request: Request, prompt_len: int, rows: int) -> None:
        self.request, self.prompt_len, self.rows = request, prompt_len, rows
        self.consumed: list[list[int]] = [[] for _ in range(rows)]
        self.constraint: Any = None

    def _build(self, device: torch.device) -> None:
        """On the first call, on the scores' device: under accelerate's split, generate()
        hands processors scores on the input ids' device, not the lm_head's (a first version
        built it on the lm_head's device and the harness caught it: cuda:0 vs cuda:1)."""
        from reference_impl.constrained import JsonConstraint

        schema = self.request.spec.json_schema
        assert schema is not None
        directory = self.request.model_dir
        vocab = json.loads((directory / "config.json").read_text())["vocab_size"]
        self.constraint = JsonConstraint(schema, str(directory / "tokenizer.json"), self.rows, vocab,
                                         self.request.eos_id, device)
        self.fresh = self.constraint.matchers[0].deep_copy()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.constraint is None:
            self._build(scores.device)
        generated = input_ids[:, self.prompt_len:].tolist()
        for row, tokens in enumerate(generated):
            done = self.consumed[row]
            if tokens[: len(done)] != done:  # a beam took over this row: replay its history
                self.constraint.matchers[row] = self.fresh.deep_copy()
                done = []
            if len(tokens) > len(done):
                self.constraint.advance(tokens[len(done):], rows=[row] * (len(tokens) - len(done)))
            self.consumed[row] = tokens
        return self.constraint.apply(scores)


@register
class TransformersEngine(Engine):
    name = "transformers"
    model: Any  # a PreTrainedModel, possibly dispatched by accelerate
    capabilities = Capabilities(
        features=frozenset({"logit_bias", "beam_search", "json_schema"}),
        devices=frozenset({"cpu", "cuda", "auto"}),
        runs_on_torch=True,
        batching=True,  # left-padded batches with their attention_mask, one generate() per batch
        transfers=TRANSFORMERS_TRANSFERS,
        feature_transfers=TRANSFORMERS_FEATURE_TRANSFERS,
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return engine_problem(cls.name)  # versions declared in harness/engines/versions.py

    def load(self, request: Request, placement: Placement) -> None:
        self.options: TransformersOptions = request.options or TransformersOptions()
        _import_transformers()
        model = place(load_causal_lm(request.model_dir, request.spec.dtype, self.options.from_pretrained), placement)
        self.base = model  # the transformers model: generate() calls its forward, the harness hooks it
        if self.options.peft is not None:
            model = with_peft_adapter(model, self.options.peft)
        self.model = model
        self.input_device = self.base.get_input_embeddings().weight.device
        self.assistant = self.tokenizer = self.assistant_tokenizer = None
        self.image_inputs = image_inputs_of(request)  # an image-text model given an image: its own path
        if self.options.assistant is not None:
            self.assistant = load_assistant(self.options.assistant, placement, request.spec.dtype)
            if self.options.assistant.vocab_size is not None:
                self.assistant_tokenizer = different_tokenizer(self.options.assistant.vocab_size)
        if self.assistant_tokenizer is not None or TOKENIZER_OPTIONS & set(self.options.generate):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(request.model_dir)
            if self.tokenizer.pad_token is None:  # token healing pads its prompts; generate() pads with EOS too
                self.tokenizer.pad_token = self.tokenizer.eos_token

    def modules(self) -> list[torch.nn.Module]:
        return [self.base]

    def generate(self, request: Request) -> Generation:
        spec = request.spec
        beams, sampling = spec.beams, spec.sampling
        kwargs: dict[str, Any] = {
            "max_new_tokens": spec.max_new_tokens,
            "eos_token_id": spec.eos_id,
            "pad_token_id": spec.eos_id,
            "do_sample": not sampling.greedy,
        }
        if not sampling.greedy:
            kwargs |= {"temperature": sampling.temperature, "top_k": sampling.top_k or 0, "top_p": sampling.top_p or 1.0}
        if sampling.repetition_penalty:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        if spec.logit_bias:
            kwargs["sequence_bias"] = sequence_bias_argument(spec.logit_bias)
        if beams is not None:
            kwargs |= {"num_beams": beams.num_beams, "length_penalty": beams.length_penalty,
                       "num_return_sequences": beams.num_return, "output_scores": True,
                       "return_dict_in_generate": True, "early_stopping": True}
        if spec.stop_id is None:  # stop_at_eos: false; only then (transformers 4.5x refuses it with an assistant)
            kwargs["min_new_tokens"] = spec.max_new_tokens
        if self.assistant is not None:
            kwargs["assistant_model"] = self.assistant
        if self.tokenizer is not None:  # stop_strings, token healing, an assistant with its own tokenizer
            kwargs["tokenizer"] = self.tokenizer
        if self.assistant_tokenizer is not None:
            kwargs["assistant_tokenizer"] = self.assistant_tokenizer
        kwargs |= generate_arguments(self.options.generate)  # the scenario's own generate() arguments win
        _refuse_hub_only_modes(kwargs)
        if self.image_inputs is not None:
            return self._generate_with_image(request, kwargs)
        if spec.batch is not None:
            return self._generate_batches(request, kwargs)
        tokens: list[list[int]] = []
        extra: dict[str, Any] = {"beams": []}
        for ids in request.prompt_ids:
            request.on_phase("prefill")
            torch.manual_seed(sampling.seed)
            prompt = torch.tensor([ids], device=self.input_device)
            if spec.json_schema is not None:
                from transformers import LogitsProcessorList

                rows = beams.num_beams if beams is not None else 1
                kwargs["logits_processor"] = LogitsProcessorList([JsonSchemaProcessor(request, len(ids), rows)])
            try:
                out = self.model.generate(prompt, **kwargs)
            except ValueError as exc:
                if self.assistant is not None and "MinLengthLogitsProcessor" in str(exc):
                    # transformers 4.5x refuses a minimum length with an assistant (4.48 and 5.x take it)
                    raise Unsupported(f"transformers {installed_version('transformers')} refuses min_new_tokens with assisted "
                                      "decoding, which a scenario with stop_at_eos: false needs") from None
                raise
            if beams is not None:
                sequences = out.sequences[:, len(ids):].tolist()
                scores = out.sequences_scores.tolist()
                extra["beams"].append([{"tokens": _strip(t, spec.eos_id), "score": sc} for t, sc in zip(sequences, scores, strict=True)])
                tokens.append(_strip(sequences[0], spec.eos_id))
            else:
                tokens.append(_strip(out[0, len(ids):].tolist(), spec.eos_id, keep_eos=True))
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens],
                          extra=extra if beams is not None else {})

    def _generate_batches(self, request: Request, kwargs: dict[str, Any]) -> Generation:
        """The prompts as padded batches: the EOS id pads (as pad_token_id), the attention_mask
        masks it, and generate() gives each row its positions from the mask and pads a row that
        reached EOS while the others go on (the padding is stripped, never a token)."""
        spec = request.spec
        assert spec.batch is not None
        if spec.batch.padding == "right":
            raise Unsupported("transformers generate() appends every row's next token after the batch's last slot, "
                              "so a right-padded row would continue after its padding (decoder-only models need "
                              "padding: left, the tokenizer's padding_side='left')")
        if self.assistant is not None:
            raise Unsupported("transformers assisted decoding runs one sequence at a time (batch size 1)")
        prompts, tokens = request.prompt_ids, []
        for group in spec.batch.groups(len(prompts)):
            rows = [prompts[i] for i in group]
            width = max(len(r) for r in rows)
            ids = [[spec.eos_id] * (width - len(r)) + r for r in rows]
            mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
            request.on_phase("prefill")
            torch.manual_seed(spec.sampling.seed)
            out = self.model.generate(torch.tensor(ids, device=self.input_device),
                                      attention_mask=torch.tensor(mask, device=self.input_device), **kwargs)
            tokens += [_strip(row, spec.eos_id, keep_eos=True) for row in out[:, width:].tolist()]
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        """Through generation's own path: the prompt's first token, then one cached step per
        given token (a plain full forward would hide a bug in the cached decode path)."""
        if self.image_inputs is not None:
            return self.image_inputs.teacher_forced_logits(self.model, ids, self.input_device)
        return cached_teacher_forcing(self.model, ids, self.input_device)

    def _generate_with_image(self, request: Request, kwargs: dict[str, Any]) -> Generation:
        """Each prompt with the scenario's image, through the model's processor, then generate()."""
        assert self.image_inputs is not None
        if kwargs.get("num_beams", 1) > 1 or request.spec.json_schema is not None:
            raise Unsupported("with inputs.image the transformers engine runs greedy and sampled decoding only")
        tokens: list[list[int]] = []
        for prompt in request.scenario.prompt_list:
            request.on_phase("prefill")
            torch.manual_seed(request.spec.sampling.seed)
            inputs = self.image_inputs.encode(prompt, self.input_device)
            out = self.model.generate(**inputs, **kwargs)
            tokens.append(_strip(out[0, inputs["input_ids"].shape[1]:].tolist(), request.spec.eos_id, keep_eos=True))
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    def close(self) -> None:
        self.model = self.base = self.assistant = self.tokenizer = self.assistant_tokenizer = None


# generate() arguments that need the tokenizer object passed as `tokenizer=`.
TOKENIZER_OPTIONS = {"stop_strings", "token_healing"}


def _import_transformers() -> None:
    """transformers and what generate() needs, imported: one that cannot import here (an old
    release beside a too-new huggingface_hub or kernels) is a skip naming the clash."""
    try:
        from transformers import AutoModelForCausalLM, GenerationConfig  # noqa: F401
    except ImportError as exc:
        raise Unsupported(import_problem("transformers", exc)) from exc


def generate_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """The scenario's generate() options, a `watermarking_config` mapping made the config
    class it names: `kind: synthid` (or SynthID's own fields, `keys` and `ngram_len`) is a
    SynthIDTextWatermarkingConfig, else `kind: kirchenbauer` (the default) a
    WatermarkingConfig. transformers itself makes every mapping the latter before 5.x."""
    watermark = options.get("watermarking_config")
    if not isinstance(watermark, dict):
        return dict(options)
    fields = {k: v for k, v in watermark.items() if k != "kind"}
    kind = watermark.get("kind", "synthid" if {"keys", "ngram_len"} & set(fields) else "kirchenbauer")
    import transformers

    name = "SynthIDTextWatermarkingConfig" if kind == "synthid" else "WatermarkingConfig"
    config_class = getattr(transformers, name, None)
    if config_class is None:
        raise Unsupported(f"transformers {installed_version('transformers')} has no {name} ({kind} watermarking)")
    return options | {"watermarking_config": config_class(**fields)}


def different_tokenizer(vocab_size: int) -> Any:
    """A second tokenizer, not the model's: a byte-level BPE of `vocab_size` trained on every
    other line of the corpus (harness/models/tokenizer.py), for an assistant of its own."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from harness.models.tokenizer import SPECIAL_TOKENS, trained_tokenizer_json

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(trained_tokenizer_json(vocab_size, True)),
                                   bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1], unk_token=SPECIAL_TOKENS[2])


def load_causal_lm(directory: Path, dtype: str, extra: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from harness.models.tiny_multimodal import is_multimodal_dir

    auto = AutoModelForImageTextToText if is_multimodal_dir(directory) else AutoModelForCausalLM
    return auto.from_pretrained(directory, **dtype_argument(TORCH_DTYPES[dtype]), **extra).eval()


class ImageInputs:
    """A generated image-text model's processor and the scenario's generated image: the inputs
    generate() gets for each prompt (ids with the image tokens expanded, pixel values, ...)."""

    def __init__(self, directory: Path, image: Any, prompt_ids: list[list[int]], prompts: list[str]) -> None:
        from transformers import AutoProcessor

        from harness.models.tiny_multimodal import generated_image, image_prompt

        self.processor = AutoProcessor.from_pretrained(directory)
        self.template = image_prompt(directory)
        self.image = generated_image(image.size, image.seed)
        self.prompts = {tuple(ids): text for ids, text in zip(prompt_ids, prompts, strict=True)}

    def encode(self, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
        inputs = self.processor(images=self.image, text=self.template.format(prompt=prompt), return_tensors="pt")
        return {k: v.to(device) for k, v in inputs.items() if k != "labels"}

    def teacher_forced_logits(self, model: Any, ids: list[int], device: torch.device) -> torch.Tensor:
        """Logits [len(ids), V] for a scenario prompt's ids plus generated ids: the prompt with its
        image as generate()'s prefill, then one cached step per generated token. The prompt's
        rows are the prefill's last len(prompt) positions (the last is the one that chose the
        first token; the image tokens the processor added come before them)."""
        prompt = next((p for p in self.prompts if tuple(ids[: len(p)]) == p), None)
        if prompt is None:
            raise Unsupported("teacher forcing with an image: the ids do not start with a prompt of the scenario")
        inputs = self.encode(self.prompts[prompt], device)
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            rows = list(out.logits[0, -len(prompt):].float().cpu())
            mask = inputs["attention_mask"]
            for token in ids[len(prompt):]:
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                out = model(input_ids=torch.tensor([[token]], device=device), attention_mask=mask,
                            past_key_values=out.past_key_values, use_cache=True)
                rows.append(out.logits[0, -1].float().cpu())
        return torch.stack(rows)


def image_inputs_of(request: Request) -> ImageInputs | None:
    """The processor and image of a scenario with `inputs.image` (None without one)."""
    from harness.models.tiny_multimodal import is_multimodal_dir

    inputs = getattr(request.scenario, "inputs", None)
    if inputs is None:
        return None
    if not is_multimodal_dir(request.model_dir):
        raise Unsupported(f"inputs.image: {request.model_dir} is not a generated image-text model with its processor")
    return ImageInputs(request.model_dir, inputs.image, request.prompt_ids, request.scenario.prompt_list)


def place(model: Any, placement: Placement) -> Any:
    """On one device, or for `auto` dispatched by accelerate over the GPUs, balanced."""
    if placement.kind == "auto":
        from accelerate import dispatch_model

        device_map = balanced_device_map(model, placement.devices)
        # main_device: else accelerate picks one from a set, so the copies per token would
        # depend on PYTHONHASHSEED. skip_keys: the cache stays where each layer put it, as
        # from_pretrained(device_map=...) dispatches (transformers passes
        # model._skip_keys_device_placement); without it a tuple past_key_values handed to
        # the model (Outlines 0.0.x) is moved whole to the main device.
        model = dispatch_model(model, device_map=device_map, main_device=placement.devices[0],
                               skip_keys=model._skip_keys_device_placement)
        _place_own_tensors(model, device_map)
        return model
    if placement.devices[0] != "cpu":
        return model.to(placement.devices[0])
    return model


def load_assistant(options: Assistant, placement: Placement, dtype: str) -> Any:
    """The assistant model of assisted decoding, generated tiny, on its own device."""
    from harness.models import tinymodel

    device = placement.devices[0] if options.device == "same" or placement.kind == "cpu" else options.device
    if device.startswith("cuda") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise Unsupported(f"the assistant asks for {device}, and {torch.cuda.device_count()} GPU(s) are visible")
    model = load_causal_lm(tinymodel.model_dir(options.model), dtype, {})
    if options.vocab_size is not None:  # its own tokenizer's vocabulary: the head and embeddings cut to it
        model.resize_token_embeddings(options.vocab_size)
    return model.to(device)


def with_peft_adapter(model: Any, options: PeftAdapter) -> Any:
    """A peft adapter of random (seeded) weights around the placed model."""
    try:
        import peft
    except ImportError:
        raise Unsupported("peft is not installed (pip install peft)") from None
    config: Any
    if options.type == "lora":
        config = peft.LoraConfig(task_type="CAUSAL_LM", r=options.r, init_lora_weights=False,
                                 target_modules=["q_proj", "v_proj"])
    elif options.type == "prefix_tuning":
        config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens)
    else:
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens)
    torch.manual_seed(options.seed)
    return peft.get_peft_model(model, config).eval()


def _refuse_hub_only_modes(kwargs: dict[str, Any]) -> None:
    """Decoding modes newer transformers moved to the Hub (DoLa, contrastive search, group and
    constrained beam search; GENERATION_MODES_MAPPING names each one's repo) need a download
    this harness never makes: a skip naming the repo, unless it is cached. The mode is
    generate()'s own, from every argument it gets (`num_beams` of `features.beam_search` with
    the scenario's `num_beam_groups` is group beam search); the fields are set without
    GenerationConfig's validation, which would refuse some combinations before the mode is known."""
    try:
        from transformers import GenerationConfig
        from transformers.generation.utils import GENERATION_MODES_MAPPING
    except ImportError:  # an older transformers runs every mode itself
        return
    config = GenerationConfig()
    for key, value in kwargs.items():
        if hasattr(config, key):
            setattr(config, key, value)
    try:
        mode = config.get_generation_mode(kwargs.get("assistant_model"))
    except Exception:  # an invalid combination: generate() itself will say why
        return
    repo = GENERATION_MODES_MAPPING.get(mode, "")
    if "/" in repo and not kwargs.get("custom_generate") and not _hub_cached(repo):
        raise Unsupported(f"transformers moved {mode.name.lower()} to the Hub repo {repo} (custom_generate), "
                          "which is not in the local Hugging Face cache and is never downloaded here")


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, local_files_only=True)
    except Exception:
        return False
    return True


def cached_teacher_forcing(model: Any, ids: list[int], device: torch.device) -> torch.Tensor:
    """Logits [len(ids), V] (float32, CPU): ids[0] as a prefill, then each later id as one
    decode step with the model's KV cache, the way generate() feeds tokens."""
    rows = []
    with torch.no_grad():
        out = model(torch.tensor([ids[:1]], device=device), use_cache=True)
        rows.append(out.logits[0, -1].float().cpu())
        for token in ids[1:]:
            out = model(torch.tensor([[token]], device=device), past_key_values=out.past_key_values, use_cache=True)
            rows.append(out.logits[0, -1].float().cpu())
    return torch.stack(rows)


def _strip(tokens: list[int], eos_id: int, keep_eos: bool = False) -> list[int]:
    """Tokens up to EOS (kept when keep_eos) and without the padding generate() adds."""
    if eos_id in tokens:
        end = tokens.index(eos_id)
        return tokens[: end + 1] if keep_eos else tokens[:end]
    return tokens
