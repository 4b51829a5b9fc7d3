"""Hub errors that say what to do, and the mapping of huggingface_hub's and the network's
exceptions onto them (with the token masked should a server echo it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finetune.errors import FinetuneError


class HubError(FinetuneError):
    """Publishing failed; the message says why and what to do. Local files are unchanged."""


class HubAuthError(HubError):
    """No token, or the Hub refused it (401) or refused the write (403)."""


class HubConnectionError(HubError):
    """The Hub could not be reached, or the connection dropped during the push."""


def token_source() -> str:
    return "the HF_TOKEN environment variable" if os.environ.get("HF_TOKEN") else "`hf auth login`"


@contextmanager
def hub_errors(repo_id: str, model_dir: Path) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into HubErrors that say what to do."""
    try:
        yield
    except HubError:
        raise
    except Exception as err:
        mapped = _map_error(err, repo_id, model_dir)
        if mapped is None:
            raise
        raise mapped from None


def _map_error(err: Exception, repo_id: str, model_dir: Path) -> HubError | None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    retry = f"Run `finetune push {model_dir} --repo-id {repo_id}` again"
    chain = list(_causes(err))
    http = next(
        (e for e in chain if isinstance(e, HfHubHTTPError) and e.response is not None), None
    )
    if http is not None:
        status = http.response.status_code
        detail = _scrub(http.response.headers.get("X-Error-Message") or "")
        detail = f" ({detail})" if detail else ""
        if status == 401:
            return HubAuthError(
                f"the Hub rejected the token from {token_source()} (401 Unauthorized{detail}): "
                "it is invalid, expired or revoked. Set HF_TOKEN to a valid token with write "
                "access, or run `hf auth login --force`. Nothing was changed locally"
            )
        if status == 403:
            return HubAuthError(
                f"the token from {token_source()} may not write to {repo_id} (403 "
                f"Forbidden{detail}): use a write token of the user or an organization that "
                f"owns {repo_id.split('/')[0]!r}, or push to a namespace you own. "
                "Nothing was changed locally"
            )
        return HubError(
            f"the Hub refused the push to {repo_id} (HTTP {status}{detail}): "
            f"{_scrub(str(http)).splitlines()[0]}. {retry}; local files are unchanged"
        )
    if any(_is_network_error(e) for e in chain):
        detail = "; ".join(dict.fromkeys(_scrub(str(e)) for e in chain if str(e)))
        return HubConnectionError(
            f"the connection to the Hub at {constants.ENDPOINT} failed while pushing to "
            f"{repo_id} ({detail}). Check the network (and HF_ENDPOINT). {retry}: files that "
            "reached the Hub are not sent twice. Local files are unchanged"
        )
    if isinstance(err, ValueError) and "README.md" in str(err):
        return HubError(f"the Hub rejected the model card metadata: {_scrub(str(err))}")
    return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_network_error(err: BaseException) -> bool:
    # httpx (huggingface_hub 1.x) or httpx2 (2.x) transport errors, or socket errors; by
    # name, so that neither HTTP library has to be imported here. huggingface_hub closes its
    # shared client after a connection error, so a parallel upload then fails with
    # "client has been closed", or (2.x, a retry that finds the client gone) with an
    # AttributeError that its LFS upload wraps as "Error while uploading 'FILE' to the Hub."
    # (an HTTP refusal would be in the chain as HfHubHTTPError, mapped before this).
    names = {cls.__name__ for cls in type(err).__mro__}
    closed = isinstance(err, RuntimeError) and (
        "client has been closed" in str(err) or str(err).startswith("Error while uploading")
    )
    return closed or bool(names & {"TransportError", "ConnectionError", "TimeoutError"})


def _scrub(text: str) -> str:
    """`text` with the token (should a server echo it) masked."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text
