"""A warm Voila kernel in each reviewer's server: the worklist opens without waiting for one.

Voila 0.5 pre-heats kernels only in its standalone application; the Voila *server
extension* that JupyterHub's single-user servers run starts a new kernel for every page.
:class:`WarmKernelManager`, set as ``ServerApp.kernel_manager_class`` (by
:func:`usreview.hub.dashboards.prepare_server`, for the people who land on the worklist),
brings Voila's own pool to the extension: for each notebook of :attr:`pooled_notebooks` it
keeps :attr:`pool_size` kernels that have started and run the notebook before anyone asks.
Voila's page handler takes one (``get_rendered_notebook``: the page is the notebook already
rendered, its widgets live in a kernel nobody has used), and a replacement starts
``fill_delay`` seconds later. Other notebooks get a new kernel per page, as before.

Security is unchanged: a pooled kernel is a kernel of the same server, started with the
server's environment (its owner's token and nothing else) and handed to that owner's next
page only. A pooled notebook runs before its request exists, so it must not read the
request (query string, headers): ``study.ipynb`` (``?study=UID``) and ``teaching.ipynb``
(``?case=UID``) are never pooled.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Final

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.ioloop import IOLoop
from traitlets import Int, List, Unicode
from voila.configuration import VoilaConfiguration
from voila.notebook_renderer import NotebookRenderer
from voila.paths import collect_template_paths
from voila.request_info_handler import RequestInfoSocketHandler
from voila.server_extension import load_config_file
from voila.utils import ENV_VARIABLE, get_page_config
from voila.voila_kernel_manager import voila_kernel_manager_factory, wait_before

from usreview.hub.dashboards import DASHBOARD_FOLDER

__all__ = ["POOLED_NOTEBOOKS", "WarmKernelManager"]

POOLED_NOTEBOOKS: Final = (f"{DASHBOARD_FOLDER}/worklist.ipynb",)
"""Notebooks (paths under the server's root) that read nothing of their request."""

_VoilaPool: Any = voila_kernel_manager_factory(AsyncMappingKernelManager, True, 1)


class WarmKernelManager(_VoilaPool):  # type: ignore[misc]
    """Jupyter's kernel manager with Voila's pool of pre-rendered notebooks, per server."""

    pooled_notebooks = List(
        Unicode(),
        default_value=list(POOLED_NOTEBOOKS),
        config=True,
        help="Notebooks kept warm (paths under the server's root); each must not read "
        "its request (query string, headers), since it runs before the request exists.",
    )
    pool_size = Int(
        1, min=0, config=True, help="Warm kernels kept per pooled notebook (0: no pool)."
    )

    def __init__(self, **kwargs: Any) -> None:
        # Voila's own __init__ expects the standalone Voila application as parent.
        AsyncMappingKernelManager.__init__(self, **kwargs)  # type: ignore[no-untyped-call]
        self._wait_at_startup = True
        self.notebook_data: dict[str, Any] = {}
        self._pools: dict[str, list[asyncio.Future[Any]]] = {}
        self.notebook_path = None
        self._voila_configuration: VoilaConfiguration | None = None
        # Once the server runs: its web application and the Voila extension exist by then.
        IOLoop.current().add_callback(self._fill_all)

    def _fill_all(self) -> None:
        for name in self.pooled_notebooks:
            if os.path.isfile(os.path.join(self.root_dir, name)):
                self.fill_if_needed(delay=0, notebook_name=name)
            else:
                self.log.warning("usreview: no %s to keep a warm kernel for", name)

    def get_pool_size(self, notebook_name: str) -> int:
        """Warm (or warming) kernels of ``notebook_name``; failed ones are dropped."""
        pool = self._pools.get(notebook_name, [])
        pool[:] = [t for t in pool if not (t.done() and (t.cancelled() or t.exception()))]
        return len(pool)

    def fill_if_needed(
        self,
        delay: float | None = None,
        notebook_name: str | None = None,
        extra_kernel_env_variables: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start kernels for ``notebook_name`` until its pool is full (pooled notebooks only).

        Request details of the page that emptied the pool (``extra_kernel_env_variables``)
        are not passed on: the next kernel is for another page.
        """
        if notebook_name not in self.pooled_notebooks or self.pool_size <= 0:
            return
        pool = self._pools.setdefault(notebook_name, [])
        server = self.parent
        env = {
            **os.environ,
            ENV_VARIABLE.VOILA_PREHEAT: "True",
            ENV_VARIABLE.VOILA_BASE_URL: server.base_url,
            ENV_VARIABLE.VOILA_SERVER_URL: server.web_app.settings.get("server_url", "/"),
            ENV_VARIABLE.VOILA_APP_PORT: str(server.port),
        }
        wait = self.fill_delay if delay is None else delay
        for _ in range(self.pool_size - self.get_pool_size(notebook_name)):
            start = self._initialize(
                notebook_name, None, path=os.path.dirname(notebook_name), env=env
            )
            task = asyncio.ensure_future(wait_before(wait, start))
            task.add_done_callback(self._report)
            pool.append(task)

    def _report(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            self.log.error("usreview: a warm kernel failed to start: %s", task.exception())
        else:
            kernel_id = task.result()["kernel_id"]
            self.log.info("usreview: warm kernel %s started", kernel_id)
            task.result()["task"].add_done_callback(
                lambda _: self.log.info("usreview: warm kernel %s has run its notebook", kernel_id)
            )

    async def shutdown_kernel(self, kernel_id: str, *args: Any, **kwargs: Any) -> None:
        """Shut a kernel down and forget the request details kept for it."""
        RequestInfoSocketHandler._cache.pop(kernel_id, None)
        await super().shutdown_kernel(kernel_id, *args, **kwargs)

    def _notebook_renderer_factory(self, notebook_path: str | None = None) -> NotebookRenderer:
        """A renderer set up as the Voila server extension's page handler sets up its own."""
        server = self.parent
        configuration = self._configuration()
        settings = server.web_app.settings
        page_config = get_page_config(
            base_url=server.base_url,
            settings=settings,
            log=self.log,
            voila_configuration=configuration,
        )
        if configuration.page_config_hook:
            page_config = configuration.page_config_hook(
                page_config,
                base_url=server.base_url,
                settings=settings,
                log=self.log,
                voila_configuration=configuration,
                notebook_path=notebook_path,
            )
        return NotebookRenderer(
            voila_configuration=configuration,
            traitlet_config=server.config,
            notebook_path=notebook_path,
            template_paths=collect_template_paths(["voila", "nbconvert"], configuration.template),
            config_manager=server.config_manager,
            contents_manager=server.contents_manager,
            base_url=server.base_url,
            kernel_spec_manager=server.kernel_spec_manager,
            page_config=page_config,
            mathjax_config=settings.get("mathjax_config"),
            mathjax_url=settings.get("mathjax_url"),
        )

    def _configuration(self) -> VoilaConfiguration:
        """Voila's settings, read as its server extension reads them."""
        if self._voila_configuration is None:
            configuration = VoilaConfiguration(parent=self.parent)
            local = load_config_file()
            if local is not None:
                configuration.update_config(local)
            self._voila_configuration = configuration
        return self._voila_configuration
