# A minimal mix release whose nodes reach each other through the local edist gateway.
# No dependencies: it builds offline (`MIX_ENV=prod mix release`).
defmodule HelloEdist.MixProject do
  use Mix.Project

  def project do
    [
      app: :hello_edist,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [
        hello_edist: [
          # true for a self-contained release to ship to hosts without Erlang.
          include_erts: false
        ]
      ]
    ]
  end

  def application do
    [mod: {HelloEdist.Application, []}, extra_applications: [:logger]]
  end
end
