# camtester: `make run` starts the whole service on this machine, `make test` tests it.
# Both install what is missing first: Debian packages (as root) and a virtualenv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := var/stamps

APT_PACKAGES := ffmpeg redis-server redis-tools \
	gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-tools \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	iproute2 nftables fping procps util-linux

.PHONY: run test lint bench deps venv clean

run: deps venv
	$(BIN)/python -m camtester.devtools.devstack

test: deps venv
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff format --check camtester tests bench celeryconfig.py wsgi.py
	$(BIN)/ruff check camtester tests bench celeryconfig.py wsgi.py
	$(BIN)/mypy camtester

bench: deps venv
	$(BIN)/python -m bench

deps: $(STAMP)/apt

venv: $(STAMP)/venv

# Debian packages: install only the missing ones, so a set-up machine skips apt.
$(STAMP)/apt: Makefile
	@mkdir -p $(STAMP)
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMP)/venv: pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) var build *.egg-info
