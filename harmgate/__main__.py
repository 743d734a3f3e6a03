from harmgate.cli import app

app(prog_name="harmgate")
