"""RefinerService over gRPC: a thin servicer (proto <-> domain) and its bootstrap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from grpc import aio

from philip.exploration import SessionDefaults, constraints_from_pb, defaults_to_pb
from philip.feedback_weights import weights_from_pb
from philip.generation.codec import params_from_pb
from philip.generation.requests import RequestResolver, load_styles
from philip.logs import bind_ids, get_logger
from philip.rpc.server import RegisterFn
from philip.settings import DEFAULT_SESSION_DEFAULTS_PATH, DEFAULT_VOCABULARY_PATH, Settings
from philip.v1 import refiner_pb2, refiner_pb2_grpc
from services.refiner import codec
from services.refiner.defaults import load_defaults
from services.refiner.explore import PromptVocabulary, SlotVocabulary
from services.refiner.modifiers import load_vocabulary
from services.refiner.service import Refiner

log = get_logger("services.refiner.server")
SERVICE_NAME = refiner_pb2.DESCRIPTOR.services_by_name["RefinerService"].full_name


class RefinerServicer(refiner_pb2_grpc.RefinerServiceServicer):
    """Decode and validate -> run on the domain -> encode. Errors are mapped by the interceptor."""

    def __init__(self, refiner: Refiner) -> None:
        self.refiner = refiner

    async def Refine(self, request: refiner_pb2.RefineRequest,
                     context: aio.ServicerContext) -> AsyncIterator[refiner_pb2.RefineEvent]:
        round_id = codec.round_id_from_pb(request.round_id)
        with bind_ids(round_id=round_id):
            job = self.refiner.job(params_from_pb(request.params), codec.feedback_from_pb(list(request.liked), "liked"),
                                   codec.feedback_from_pb(list(request.disliked), "disliked"),
                                   weights_from_pb(request.weights), round_id,
                                   codec.history_from_pb(list(request.history)),
                                   constraints_from_pb(request.constraints))
            events = self.refiner.refine(job)
            try:
                async for event in events:
                    yield codec.event_to_pb(event, job.params.num_images)
            finally:
                await events.aclose()  # the client left or the deadline passed: stop within one step

    async def GetDefaults(self, request: refiner_pb2.GetDefaultsRequest,
                          context: aio.ServicerContext) -> refiner_pb2.RefinerDefaults:
        return defaults_to_pb(self.refiner.defaults)

    async def Upscale(self, request: refiner_pb2.UpscaleRequest,
                      context: aio.ServicerContext) -> AsyncIterator[refiner_pb2.UpscaleEvent]:
        async for event in self.refiner.upscale(request.image.png, request.scale):
            yield codec.upscale_event_to_pb(event)


def open_refiner(settings: Settings) -> Refiner:
    """The refiner domain for ``settings``: loads the model and the upscaler. Blocking."""
    import torch

    from philip.models.adapters import AdapterSwitch
    from philip.models.load_options import LoadOptions
    from philip.models.pipelines import load_pipeline, schedulers_for, served_defaults
    from philip.models.upscaler import OnnxUpscaler
    from philip.previews import PreviewEncoder
    from services.refiner.rounds import RoundRunner
    from services.refiner.upscale import Upscaler

    torch.set_num_threads(settings.server.torch_threads)
    defaults, vocabulary = session_defaults(settings)
    # Before the model: a missing ONNX provider (PHILIP_ONNX_PROVIDERS) refuses at once, not after minutes of loading.
    upscaler = Upscaler(OnnxUpscaler(settings.models.upscaler_path, providers=settings.models.onnx_providers,
                                     fallback=settings.models.onnx_fallback),
                        max_waiting=settings.batching.max_queue)
    options = LoadOptions.from_settings(settings.models)  # PHILIP_UNET_PATH, PHILIP_BASE_LORA: as the generator's
    pipe = load_pipeline(settings.models.model_dir, settings.server.device, settings.models.dtype, options)
    generation = served_defaults(settings.models.model_dir, pipe, options)
    runner = RoundRunner(pipe, previews=PreviewEncoder.for_pipeline(pipe, settings.models.model_dir),
                         adapters=AdapterSwitch(pipe, settings.models.adapters_dir, settings.models.adapter_cache),
                         vocabulary=vocabulary, fabric_layers=settings.models.fabric_layers)
    log.info("fabric.layers", layers=runner.fabric_layers, asked=settings.models.fabric_layers or "family default")
    resolver = RequestResolver(native_size=generation.native_size, schedulers=schedulers_for(pipe),
                               styles=load_styles(settings.models.styles_path),
                               adapters_dir=settings.models.adapters_dir, defaults=generation)
    return Refiner(runner, upscaler, resolver, max_queue=settings.batching.max_queue, defaults=defaults,
                   max_batch=settings.batching.refine_max_batch or settings.batching.max_batch,
                   batch_window_ms=settings.batching.batch_window_ms)


def session_defaults(settings: Settings) -> tuple[SessionDefaults, SlotVocabulary | None]:
    """The served model's vocabulary and the weights a session without any gets; ValueError (at start-up) for a
    bad file. The shipped files missing (a process started outside the project folder) mean none."""
    vocabulary_path = settings.models.vocabulary_path
    if vocabulary_path == DEFAULT_VOCABULARY_PATH and not Path(vocabulary_path).is_file():
        log.warning("vocabulary.missing", path=vocabulary_path)
        vocabulary_path = ""
    vocabulary, vocabulary_source = load_vocabulary(settings.models.model_dir, vocabulary_path)
    section = ("no_vocabulary" if vocabulary is None else
               "model_vocabulary" if isinstance(vocabulary, PromptVocabulary) else "modifier_vocabulary")
    defaults_path = settings.models.session_defaults_path
    if defaults_path == DEFAULT_SESSION_DEFAULTS_PATH and not Path(defaults_path).is_file():
        log.warning("session_defaults.missing", path=defaults_path)
        defaults_path = ""
    weights, reference_weights, source = load_defaults(settings.models.model_dir, defaults_path, section)
    slots = vocabulary.slots if vocabulary is not None else ()
    return SessionDefaults(weights, source, slots, vocabulary_source, reference_weights), vocabulary


def build(settings: Settings, *, refiner: Refiner | None = None) -> list[tuple[str, RegisterFn]]:
    """Services for ``GrpcServer``; pass ``refiner`` to share one (and close it yourself)."""
    servicer = RefinerServicer(refiner or open_refiner(settings))

    def register(server: aio.Server) -> None:
        refiner_pb2_grpc.add_RefinerServiceServicer_to_server(servicer, server)

    return [(SERVICE_NAME, register)]
