// et_run: generates text from an ExecuTorch .pte program.
#include "runner/common/main.h"
#include "runner/et/et_model.h"

int main(int argc, char** argv) {
  return torchchat::RunMain(argc, argv, "et_run", torchchat::LoadEtModel);
}
