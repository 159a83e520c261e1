from usreview.hub.config import configure  # state: $USREVIEW_STATE or ./state

configure(c)  # type: ignore[name-defined]  # noqa: F821
