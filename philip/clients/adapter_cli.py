"""`philip adapter create|list|delete`: personalization adapters through the gateway."""

from __future__ import annotations

from pathlib import Path

import typer

from philip.clients.output import console

adapter_app = typer.Typer(help="Personalization adapters: train from 4-7 photos, list, delete.", no_args_is_help=True)


@adapter_app.command("create")
def adapter_create_cmd(
    images: list[Path] = typer.Argument(..., help="4-7 PNG/JPEG photos of the subject."),
    token: str = typer.Option(..., help="A made-up word for the subject, 2-32 lowercase letters (e.g. sks)."),
    class_word: str = typer.Option(..., help="What kind of subject it is (e.g. dog, shape)."),
    method: str = typer.Option("lora", help="lora | textual_inversion."),
    steps: int = typer.Option(0, help="Training steps (0 = the method's default)."),
    rank: int = typer.Option(0, help="LoRA rank (0 = default 8)."),
    gateway: str = typer.Option("127.0.0.1:50051", help="Gateway address host:port."),
    out: Path = typer.Option(Path("out"), help="Folder for the training's sample previews."),
) -> None:
    """Train an adapter on the server, streaming progress; prints the adapter id to use in adapter_ids."""
    import asyncio

    import grpc
    from rich.progress import Progress

    from philip.clients.adapters import TrainingFailed, create_request, train_adapter
    from philip.clients.generate import gateway_channel
    from philip.v1 import gateway_pb2_grpc

    for path in images:
        if not path.is_file():
            console.print(f"[red]no such file[/red]: {path}")
            raise typer.Exit(2)

    async def run() -> None:
        async with gateway_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            with Progress(console=console) as progress:
                task = progress.add_task("queued", total=None)

                def on_event(event):  # type: ignore[no-untyped-def]
                    kind = event.WhichOneof("event")
                    if kind == "progress":
                        p = event.progress
                        progress.update(task, completed=p.step, total=p.total_steps,
                                        description=f"training, loss {p.loss:.4f}")
                    elif kind == "preview":
                        out.mkdir(parents=True, exist_ok=True)
                        path = out / f"{token}_step{event.preview.step}.png"
                        path.write_bytes(event.preview.image.png)
                        progress.console.print(f"sample at step {event.preview.step}: {path}")

                adapter = await train_adapter(stub, create_request(images, token, class_word, method, steps, rank),
                                              on_event)
        console.print(f"[green]adapter[/green] {adapter.adapter_id} (token {adapter.token!r}); "
                      f"use it with adapter_ids=[{adapter.adapter_id!r}]")

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        console.print(f"[red]{err.code().name}[/red]: {err.details()}")
        raise typer.Exit(2) from None
    except (TrainingFailed, ValueError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None


@adapter_app.command("list")
def adapter_list_cmd(gateway: str = typer.Option("127.0.0.1:50051", help="Gateway address host:port.")) -> None:
    """Every adapter on the server, newest first."""
    import asyncio

    from philip.clients.generate import gateway_channel
    from philip.v1 import gateway_pb2_grpc, personalizer_pb2

    async def run() -> None:
        async with gateway_channel(gateway) as channel:
            reply = await gateway_pb2_grpc.GatewayStub(channel).ListAdapters(personalizer_pb2.ListAdaptersRequest())
        for a in reply.adapters:
            method = personalizer_pb2.AdapterMethod.Name(a.method).removeprefix("ADAPTER_METHOD_").lower()
            console.print(f"{a.adapter_id}  token={a.token}  class={a.class_word}  {method}  steps={a.steps}")

    asyncio.run(run())


@adapter_app.command("delete")
def adapter_delete_cmd(
    adapter_id: str = typer.Argument(..., help="The adapter to delete."),
    gateway: str = typer.Option("127.0.0.1:50051", help="Gateway address host:port."),
) -> None:
    """Delete an adapter (its files and metadata; its token becomes free)."""
    import asyncio

    import grpc

    from philip.clients.generate import gateway_channel
    from philip.v1 import gateway_pb2_grpc, personalizer_pb2

    async def run() -> None:
        async with gateway_channel(gateway) as channel:
            await gateway_pb2_grpc.GatewayStub(channel).DeleteAdapter(
                personalizer_pb2.DeleteAdapterRequest(adapter_id=adapter_id))

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        console.print(f"[red]{err.code().name}[/red]: {err.details()}")
        raise typer.Exit(2) from None
    console.print(f"deleted {adapter_id}")


keys_app = typer.Typer(help="API keys of the gateway (PHILIP_API_KEYS_FILE).", no_args_is_help=True)


@keys_app.command("add")
def keys_add_cmd(
    tenant: str = typer.Option(..., help="The tenant the key belongs to."),
    file: Path = typer.Option(Path("api-keys.json"),
                              help="Keys file (created if absent); point PHILIP_API_KEYS_FILE at it."),
) -> None:
    """Create an API key for a tenant; only its SHA-256 is stored. Prints the key once."""
    from philip.rpc.auth import add_key

    try:
        key = add_key(file, tenant.strip())
    except ValueError as exc:
        console.print(f"[red]--tenant: {exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"key for tenant {tenant!r} added to {file} (only its hash is stored); clients send it as "
                  "`authorization: Bearer <key>` (the philip CLI reads PHILIP_API_KEY):")
    print(key)
