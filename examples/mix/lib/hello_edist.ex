defmodule HelloEdist do
  @moduledoc "What the test calls over rpc: proves the release's code answers."

  def hello(who), do: {:hello, who, node()}
end

defmodule HelloEdist.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    Supervisor.start_link([], strategy: :one_for_one, name: HelloEdist.Supervisor)
  end
end
