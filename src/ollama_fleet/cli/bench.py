"""`bench`: streamed load against a fleet's gateway (or one instance), measured."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ollama_fleet.cli import command, err, set_verbose
from ollama_fleet.cli.options import JsonOpt, VerboseOpt


class BenchApi(str, Enum):
    generate = "generate"
    chat = "chat"
    openai = "openai"


@command("bench")
def bench_command(
    *,
    url: Annotated[str, typer.Option("--url", help="the gateway (or one instance): http://HOST:PORT", metavar="URL")],
    model: Annotated[str, typer.Option("--model", help="the model to ask", metavar="MODEL")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="requests in flight at once", min=1, max=4096)
    ] = 8,
    requests: Annotated[
        int | None, typer.Option("--requests", "-n", help="how many requests (default: 10 x concurrency)", min=1)
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="run for S seconds instead of a number of requests", min=0.1, metavar="S"),
    ] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="the prompt of every request")] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="a file of prompts, one per line, used in turn", metavar="FILE")
    ] = None,
    api: Annotated[
        BenchApi,
        typer.Option("--api", help="generate (/api/generate), chat (/api/chat) or openai (/v1/chat/completions)"),
    ] = BenchApi.generate,
    num_predict: Annotated[
        int | None,
        typer.Option("--num-predict", help="tokens to generate per request (options.num_predict / max_tokens)", min=1),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="send the first key of this file as a bearer token", metavar="PATH"),
    ] = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Load the fleet with streamed requests: requests/s, tokens/s, TTFT and latency percentiles, errors, split per instance."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ollama_fleet.bench import prepare, run_load
    from ollama_fleet.cli.views import print_bench, print_json

    set_verbose(verbose)
    run = prepare(
        url,
        model,
        requests=requests,
        duration=duration,
        concurrency=concurrency,
        prompt=prompt,
        prompts=prompts,
        api_key_file=api_key_file,
    )
    what = f"{run.total} requests" if run.total is not None else f"{duration:g} s"
    columns = [
        TextColumn(f"{api.value} {model}, {concurrency} at once, {what}"),
        BarColumn(),
        MofNCompleteColumn() if run.total is not None else TextColumn("{task.completed} done"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err(), transient=True, disable=json_) as bar:
        task = bar.add_task("bench", total=run.total)
        result = run_load(
            [run.url],
            model,
            concurrency=concurrency,
            requests=run.total,
            duration=duration,
            prompts=run.prompts,
            api=api.value,
            num_predict=num_predict,
            headers=run.headers,
            progress=lambda done: bar.update(task, completed=done),
        )
    summary = result.summary()
    if json_:
        print_json(summary)
    else:
        print_bench(summary)
