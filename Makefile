# walhook — `make help` lists the targets.
GO ?= go
PKG := ./...
FUZZTIME ?= 30s

PG_VERSIONS ?= 13 14 16 17 18

.PHONY: help demo test test-race test-matrix lint bench bench-scale fuzz build deps

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## install PostgreSQL server binaries when missing
	@./scripts/ensure-postgres

build: ## build bin/walhook
	$(GO) build -o bin/walhook ./cmd/walhook

demo: deps ## run walhook against a throwaway PostgreSQL and a local receiver
	$(GO) run ./cmd/walhook demo

test: deps lint ## the whole suite, race detector on (what CI runs)
	$(GO) test -race -count=1 -timeout 15m $(PKG)

test-matrix: deps ## the suite on each PostgreSQL of PG_VERSIONS (installed by scripts/install-postgres; what CI runs after make test)
	@set -e; for v in $(PG_VERSIONS); do \
	  bindir=$$(./scripts/install-postgres $$v); \
	  echo "== PostgreSQL $$v ($$bindir)"; \
	  PG_BINDIR=$$bindir $(GO) test -count=1 -timeout 15m $(PKG); \
	done

test-race: deps ## the concurrent packages under the race detector, 3 times
	$(GO) test -race -count=3 ./cdc/ ./dispatch/

lint: ## go vet, gofmt and golangci-lint (.golangci.yaml; the version is pinned in go.mod)
	$(GO) vet $(PKG)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) tool golangci-lint run $(PKG)

bench: deps ## capture vs pg_recvlogical, dispatch, latency, memory (table + bench-results.json); then Go benchmarks
	$(GO) run ./test/bench -out bench-results.json
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./cdc/... ./dispatch/
	$(GO) test -run '^$$' -bench 'AppendValue' ./cdc/payload/

bench-scale: deps ## 1, 2 and 4 dispatch-only processes draining one 200,000-row backlog
	$(GO) run ./test/bench -phases scale -out bench-scale.json

fuzz: ## fuzz the pgoutput decoder, value renderer and config parser (FUZZTIME each, default 30s)
	$(GO) test -run '^$$' -fuzz FuzzDecodeChange -fuzztime $(FUZZTIME) ./cdc/
	$(GO) test -run '^$$' -fuzz FuzzAppendValue -fuzztime $(FUZZTIME) ./cdc/payload/
	$(GO) test -run '^$$' -fuzz FuzzAppendJSONString -fuzztime $(FUZZTIME) ./cdc/payload/
	$(GO) test -run '^$$' -fuzz FuzzConditions -fuzztime $(FUZZTIME) ./cdc/payload/
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./internal/config/
