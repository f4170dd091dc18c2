from cohere_cli.cli import main

main()
