from gpunet.cli.main import main

main()
