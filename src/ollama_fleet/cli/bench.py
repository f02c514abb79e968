"""`bench`: streamed load against a fleet's gateway (or one instance), measured."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ollama_fleet.cli import command, err, set_verbose
from ollama_fleet.cli.options import JsonOpt, VerboseOpt
from ollama_fleet.errors import BadInput, UserError


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

    from ollama_fleet.bench import check_target, run_load
    from ollama_fleet.cli.views import print_bench, print_json
    from ollama_fleet.gateway.spec import read_api_keys

    set_verbose(verbose)
    problems = []
    if not re.fullmatch(r"https?://[^\s/]+", url.rstrip("/")):
        problems.append(f"url: not http://HOST:PORT or https://HOST:PORT (got {url!r})")
    if requests is not None and duration is not None:
        problems.append("requests: give --requests or --duration, not both")
    if prompt is not None and prompts is not None:
        problems.append("prompts: give --prompt or --prompts, not both")
    if problems:
        raise BadInput(problems)
    base = url.rstrip("/")
    texts = [prompt or "Write a short story about a GPU."]
    if prompts is not None:
        try:
            texts = [line for line in prompts.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise BadInput(f"prompts: cannot read {prompts} ({exc.strerror})") from None
        if not texts:
            raise BadInput(f"prompts: {prompts} holds no prompt")
    headers = {"Authorization": f"Bearer {read_api_keys(api_key_file)[0]}"} if api_key_file else {}
    if (problem := check_target(base, model, headers)) is not None:
        raise UserError(problem)
    total = requests if duration is None else None
    if total is None and duration is None:
        total = 10 * concurrency
    what = f"{total} requests" if total is not None else f"{duration:g} s"
    columns = [
        TextColumn(f"{api.value} {model}, {concurrency} at once, {what}"),
        BarColumn(),
        MofNCompleteColumn() if total is not None else TextColumn("{task.completed} done"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err, transient=True, disable=json_) as bar:
        task = bar.add_task("bench", total=total)
        result = run_load(
            [base],
            model,
            concurrency=concurrency,
            requests=total,
            duration=duration,
            prompts=texts,
            api=api.value,
            num_predict=num_predict,
            headers=headers,
            progress=lambda done: bar.update(task, completed=done),
        )
    summary = result.summary()
    if json_:
        print_json(summary)
    else:
        print_bench(summary)
